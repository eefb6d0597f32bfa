"""Exit 0 when an `accelerate config` file asks for more than one plain process (several processes, or
DeepSpeed / FSDP / XLA), so that `accelerate launch` is needed; exit 1 for a single plain process.

    python scripts/needs_launcher.py ~/.cache/huggingface/accelerate/default_config.yaml
"""

import sys

import yaml


def needs_launcher(config: dict) -> bool:
    plain = config.get("distributed_type", "NO") in ("NO", "MULTI_GPU", "MULTI_CPU")
    return not plain or int(config.get("num_processes", 1) or 1) > 1


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        sys.exit(0 if needs_launcher(yaml.safe_load(f) or {}) else 1)
