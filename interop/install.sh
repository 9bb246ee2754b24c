#!/usr/bin/env bash
# Install what the interop matrix (interop/run.py) needs on a fresh Debian 12 machine.
# Run as root from anywhere:  bash interop/install.sh
#
#   - Debian packages: amqp-tools (rabbitmq-c CLI), php-cli + php-amqplib, ruby + ruby-bunny,
#     chromium (the headless browser that tests/test_dashboard.py drives with Playwright, which
#     never downloads a browser of its own), and Node.js + npm unless a `node` is already on
#     PATH (e.g. from NodeSource)
#   - rabbitmqadmin (the v1 script of RabbitMQ 3.x, for tests/test_rabbitmqadmin.py), taken
#     from Debian's rabbitmq-server package without installing it (apt-get download +
#     dpkg-deb -x) into /usr/local/bin, unless one is already on PATH
#   - Debian's rabbitmq-server (with its rabbitmq_shovel, rabbitmq_federation and
#     rabbitmq_management plugins), for the tests that run a private RabbitMQ node next to
#     Leveret (tests/rabbitmq_node.py); installed without starting the system service
#     (a policy-rc.d for the time of the install): the tests start nodes of their own
#   - npm ci in interop/clients/node (amqplib and amqp-connection-manager, pinned by
#     package-lock.json)
#   - the Python clients/frameworks from interop/requirements.txt, with $PYTHON (default:
#     the active virtualenv's python) -- skipped when no virtualenv is active and $PYTHON is
#     unset, since Debian's system pip refuses to install (the project's `interop` extra
#     lists the same packages: pip install -e '.[test,interop]')
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

if [ "$(id -u)" -ne 0 ]; then
  echo "interop/install.sh: run as root (it uses apt-get)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
pkgs=(ca-certificates coreutils amqp-tools php-cli php-amqplib ruby ruby-bunny chromium)
if ! command -v node > /dev/null 2>&1; then
  pkgs+=(nodejs npm)
elif ! command -v npm > /dev/null 2>&1; then
  pkgs+=(npm)
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${pkgs[@]}"

if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  # keep the system node from starting (the tests run private nodes on ports of their own)
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    own_policy=1
  fi
  apt-get install -y -q --no-install-recommends rabbitmq-server
  if [ "$own_policy" -eq 1 ]; then
    rm -f "$policy"
  fi
fi

if ! command -v rabbitmqadmin > /dev/null 2>&1; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q rabbitmq-server)
  dpkg-deb -x "$tmp"/rabbitmq-server_*.deb "$tmp/x"
  script=$(find "$tmp/x" -name rabbitmqadmin -type f | head -n 1)
  if [ -z "$script" ]; then
    echo "interop/install.sh: no rabbitmqadmin in the rabbitmq-server package" >&2
    exit 1
  fi
  install -m 0755 "$script" /usr/local/bin/rabbitmqadmin
  rm -rf "$tmp"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
  echo "interop/install.sh: amqplib 2.x needs Node.js >= 18, found $(node --version)" >&2
  exit 1
fi
(cd "$HERE/clients/node" && npm ci --no-audit --no-fund --loglevel=error)

py=${PYTHON:-}
if [ -z "$py" ] && [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
fi
if [ -n "$py" ]; then
  "$py" -m pip install -q -r "$HERE/requirements.txt" -c "$HERE/../tests/constraints.txt"
else
  echo "interop/install.sh: no virtualenv active and PYTHON unset: skipped" \
       "'pip install -r interop/requirements.txt'" >&2
fi

echo "interop toolchains:"
cd "$HERE/.." && "${py:-python3}" interop/run.py --list || true
