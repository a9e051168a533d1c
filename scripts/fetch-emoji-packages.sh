#!/usr/bin/env bash
# Downloads the four npm packages of the bundled emoji dataset at pinned versions and unpacks
# each into DIR/<name>, the layout `jetformer data emoji --packages DIR` reads.
# Needs npm (it contacts the npm registry) and tar.
set -euo pipefail

dir=${1:?usage: scripts/fetch-emoji-packages.sh DIR}
mkdir -p "$dir"
cd "$dir"

# name in DIR, then the pinned npm package
packages=(
  "emoji-datasource-google emoji-datasource-google@16.0.0"
  "emoji-datasource-twitter emoji-datasource-twitter@16.0.0"
  "fluent-emoji-3d @lobehub/fluent-emoji-3d@1.1.0"
  "emojibase-data emojibase-data@17.0.0"
)
for entry in "${packages[@]}"; do
  read -r name spec <<<"$entry"
  if [[ -d "$name" ]]; then
    echo "$name: already unpacked"
    continue
  fi
  tarball=$(npm pack --silent "$spec" | tail -n 1)
  mkdir -p "$name.partial"
  tar -xzf "$tarball" -C "$name.partial" --strip-components=1
  mv "$name.partial" "$name"
  rm -f "$tarball"
  echo "$name: unpacked from $spec"
done
