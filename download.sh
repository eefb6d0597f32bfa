#!/usr/bin/env bash
# Fetch the trained model that run.sh uses:   bash ./download.sh
#
# What to fetch comes from model.lock (written by `python package_model.py`, tracked): url, sha256, size
# (bytes) and unpack_to (default models/title-model, where run.sh looks first). The environment wins:
#   MODEL_URL=...     another link (https, or a Google Drive share link / bare file id, fetched with gdown)
#   MODEL_SHA256=...  the archive's sha256 (needed when it is not the one in model.lock)
#   MODEL_DOWNLOADER=curl|wget   force one (default: curl if installed, else wget; gdown for Google Drive)
#
# The archive is downloaded into a temporary directory beside the target, checked (size, sha256), unpacked
# there and moved into place in one rename; a marker (.download-info with the sha256) makes a second run a
# no-op. On any failure it exits non-zero with a message, removes its temporary files and leaves the
# previous model (if any) as it was.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOCK="$ROOT/model.lock"
MARKER=".download-info"

die() { echo "download.sh: error: $*" >&2; exit 1; }
info() { echo "download.sh: $*" >&2; }

lock_get() {  # lock_get KEY: the value of KEY=... in model.lock (the last one wins), empty when absent
  local line value=""
  [ -f "$LOCK" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%$'\r'}"
    case "$line" in "$1="*) value="${line#*=}" ;; esac
  done < "$LOCK"
  printf '%s' "$value"
}

url="${MODEL_URL:-$(lock_get url)}"
lock_sha="$(lock_get sha256 | tr 'A-F' 'a-f')"
sha="$(printf '%s' "${MODEL_SHA256:-$lock_sha}" | tr 'A-F' 'a-f')"
size=""
if [ "$sha" = "$lock_sha" ]; then size="$(lock_get size)"; fi  # the size belongs to the lock's archive only
unpack_to="$(lock_get unpack_to)"
unpack_to="${unpack_to:-models/title-model}"

if [ -z "$url" ] || [ "${url#PLACEHOLDER}" != "$url" ]; then
  die "no download URL: model.lock still has the placeholder (upload the archive from package_model.py, then put its link in model.lock as url=... and commit it), or set MODEL_URL"
fi
if ! [[ "$sha" =~ ^[0-9a-f]{64}$ ]]; then
  die "no valid sha256 for the archive (model.lock sha256=..., or MODEL_SHA256): got '${sha}'"
fi
if [ -n "$size" ] && ! [[ "$size" =~ ^[0-9]+$ ]]; then die "model.lock: size must be a number of bytes, got '$size'"; fi
case "/$unpack_to/" in
  //*|*/../*|*/./*) die "model.lock: unpack_to must be a relative path inside the repository, got '$unpack_to'" ;;
esac
TARGET="$ROOT/${unpack_to%/}"

if [ -f "$TARGET/$MARKER" ] && [ -f "$TARGET/config.json" ] && grep -qx "sha256=$sha" "$TARGET/$MARKER"; then
  info "the model is already in $unpack_to (sha256 $sha); nothing to do"
  exit 0
fi

parent="$(dirname "$TARGET")"
created=""  # the first parent directory this run creates, removed again on failure when empty
probe="$parent"
while [ ! -e "$probe" ]; do created="$probe"; probe="$(dirname "$probe")"; done
mkdir -p "$parent" || die "cannot create $parent"
work=""
done_ok=0
cleanup() {
  if [ -n "$work" ] && [ -d "$work" ]; then rm -rf "$work"; fi
  if [ "$done_ok" = 0 ] && [ -n "$created" ]; then
    local d="$parent"
    while [ -n "$d" ] && [ "$d" != "$(dirname "$created")" ]; do rmdir "$d" 2>/dev/null || break; d="$(dirname "$d")"; done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
work="$(mktemp -d "$parent/.$(basename "$TARGET").download.XXXXXX")" \
  || die "cannot create a temporary directory in $parent (read-only, or the disk is full?)"

if [ -n "$size" ]; then
  avail_kb="$(df -Pk "$parent" 2>/dev/null | awk 'NR == 2 {print $4}')" || avail_kb=""
  need_kb=$(( (2 * size) / 1024 + 10240 ))  # the archive and the unpacked model, plus a margin
  if [[ "$avail_kb" =~ ^[0-9]+$ ]] && [ "$avail_kb" -lt "$need_kb" ]; then
    die "not enough free disk space in $parent: about $(( need_kb / 1024 )) MB needed (the archive and the unpacked model), $(( avail_kb / 1024 )) MB free"
  fi
fi

archive="$work/model.tar.gz"
drive_id=""
id_in_path='/d/([A-Za-z0-9_-]+)'
id_in_query='[?&]id=([A-Za-z0-9_-]+)'
case "$url" in
  *drive.google.com*|*docs.google.com*)
    if [[ "$url" =~ $id_in_path ]] || [[ "$url" =~ $id_in_query ]]; then drive_id="${BASH_REMATCH[1]}"
    else die "cannot find the file id in the Google Drive link $url (expected .../file/d/ID/... or ...?id=ID)"; fi ;;
  *://*) ;;
  *) if [[ "$url" =~ ^[A-Za-z0-9_-]{20,}$ ]]; then drive_id="$url"
     else die "not a URL or a Google Drive file id: $url"; fi ;;
esac

if [ -n "$drive_id" ]; then
  if command -v gdown >/dev/null 2>&1; then gdown_cmd=(gdown)
  elif command -v python3 >/dev/null 2>&1 && python3 -c "import gdown" >/dev/null 2>&1; then gdown_cmd=(python3 -m gdown)
  else die "a Google Drive link needs gdown: pip install gdown (or give a direct https link in MODEL_URL)"; fi
  info "downloading Google Drive file $drive_id with gdown"
  "${gdown_cmd[@]}" --quiet "$drive_id" -O "$archive" \
    || die "gdown could not download Google Drive file $drive_id (is it shared as 'anyone with the link'?)"
else
  downloader="${MODEL_DOWNLOADER:-}"
  if [ -z "$downloader" ]; then
    if command -v curl >/dev/null 2>&1; then downloader=curl
    elif command -v wget >/dev/null 2>&1; then downloader=wget
    else die "neither curl nor wget is installed"; fi
  fi
  info "downloading $url with $downloader${size:+ ($size bytes)}"
  case "$downloader" in
    curl)
      if [ -t 2 ]; then progress=(--progress-bar); else progress=(--silent --show-error); fi
      curl --fail --location --retry 3 --retry-delay 2 --connect-timeout 30 "${progress[@]}" -o "$archive" "$url" \
        || die "download failed: curl exit status $? for $url (22: an HTTP error such as 404 or 403; 18: the transfer was cut short; 23: cannot write, disk full?)" ;;
    wget)
      wget --quiet --tries=3 --timeout=60 -O "$archive" "$url" \
        || die "download failed: wget exit status $? for $url (8: an HTTP error such as 404 or 403; 3: cannot write, disk full?; 4: network failure)" ;;
    *) die "MODEL_DOWNLOADER must be curl or wget, got '$downloader'" ;;
  esac
fi

[ -f "$archive" ] || die "the download produced no file"
got_size="$(wc -c < "$archive" | tr -d ' ')"
if [ -n "$size" ] && [ "$got_size" != "$size" ]; then
  die "incomplete download: got $got_size bytes, model.lock says $size (a truncated transfer or a different file)"
fi
if command -v sha256sum >/dev/null 2>&1; then got_sha="$(sha256sum "$archive" | cut -d' ' -f1)"
else got_sha="$(shasum -a 256 "$archive" | cut -d' ' -f1)"; fi
if [ "$got_sha" != "$sha" ]; then
  hint=""
  if head -c 512 "$archive" | grep -qi '<html\|<!doctype'; then
    hint=" The file is a web page, not the archive: the link needs to be a direct download (Google Drive: shared as 'anyone with the link')."
  fi
  die "checksum mismatch: expected sha256 $sha, got $got_sha ($got_size bytes from $url).$hint"
fi

if ! names="$(tar -tzf "$archive")"; then die "the archive is not a readable .tar.gz"; fi
while IFS= read -r name; do
  [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "unexpected path in the archive: '$name' (package it with package_model.py)"
done <<< "$names"
mkdir "$work/model"
tar -xzmf "$archive" -C "$work/model" --no-same-owner \
  || die "cannot unpack the archive into $parent (is the disk full?)"
rm -f "$archive"
[ -f "$work/model/config.json" ] || die "the archive holds no config.json: not a model packaged by package_model.py"
printf 'sha256=%s\nsize=%s\nurl=%s\n' "$sha" "$got_size" "$url" > "$work/model/$MARKER" \
  || die "cannot write in $parent (is the disk full?)"

if [ -e "$TARGET" ]; then
  info "replacing the model in $unpack_to"
  mv "$TARGET" "$work/old" || die "cannot move the old model out of the way"
fi
if ! mv "$work/model" "$TARGET"; then
  [ -e "$work/old" ] && mv "$work/old" "$TARGET"
  die "cannot move the model into $TARGET"
fi
done_ok=1
info "model ready in $unpack_to ($got_size bytes downloaded, sha256 $sha)"
