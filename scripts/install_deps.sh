#!/usr/bin/env bash
# Installs what srgpt needs to build, test and fetch data, from Debian
# packages (and Node.js/npm when absent, for the tokenizer and demo corpus
# packages). Idempotent: packages already present are not reinstalled.
set -euo pipefail

packages=(build-essential cmake pkg-config git libopenmpi-dev openmpi-bin nlohmann-json3-dev libspdlog-dev
          libcli11-dev catch2 python3)
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "error: installing packages needs root and sudo is not installed; as root run:" >&2
      echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
      exit 1
    }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  # Through env: sudo's env_reset would drop a plain assignment.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
