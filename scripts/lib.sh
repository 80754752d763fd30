# Shared by scripts/demo and scripts/test: install what is missing, start local services, prepare the venv.
# Every step checks first, so running a script twice changes nothing the second time.

export DEBIAN_FRONTEND=noninteractive
_apt_updated=""

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  if [ -z "$_apt_updated" ]; then as_root apt-get update -qq; _apt_updated=1; fi
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# /dev/kvm as Debian's udev rules set it (0660 root:kvm; libvirt-qemu is in group kvm). On VMs where it is
# 0600 root, libvirt sees KVM as unusable by QEMU's user and re-probes QEMU's capabilities before every
# define and start (~60 s each); the guests themselves run under TCG either way (docs/vagrant.md).
ensure_kvm_device() {
  [ -c /dev/kvm ] || return 0
  getent group kvm >/dev/null || return 0
  [ "$(stat -c %G /dev/kvm)" = kvm ] && return 0
  echo "giving /dev/kvm Debian's usual owner and mode (root:kvm 0660)"
  as_root chgrp kvm /dev/kvm && as_root chmod 0660 /dev/kvm
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
  echo "starting Redis on 127.0.0.1:6379"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/labdesk.log
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "error: Redis did not start (see /var/log/redis/labdesk.log)" >&2; return 1
}

ensure_postgres() {
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "starting PostgreSQL on 127.0.0.1:5432"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
  fi
  # The tests connect over TCP as "postgres"; give that role a password when trust auth is not configured.
  if ! psql -h 127.0.0.1 -U postgres -w -d postgres -c 'select 1' >/dev/null 2>&1; then
    as_root runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'labdesk-test'" >/dev/null
    export LABDESK_TEST_PG="postgresql+psycopg://postgres:labdesk-test@127.0.0.1:5432/postgres"
  fi
}

ensure_venv() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
  local stamp=".venv/.installed-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing Python packages into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e ".[$extras]"
    touch "$stamp"
  fi
}

# The browser libraries of package-lock.json (guacamole-common-js), served by web/vendor.py.
ensure_npm_assets() {
  if ! command -v npm >/dev/null 2>&1; then need_apt nodejs npm; fi
  if [ ! -d node_modules/guacamole-common-js ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "installing browser libraries into node_modules (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
  fi
}

# guacd (Apache Guacamole's protocol daemon) turns a lab's VNC/RDP/SSH into the stream the lab page shows.
# Debian does not package it: use one already answering, else a guacd on PATH, else Docker's official
# image; otherwise say exactly what to install (labs still run, the page says the stream is unavailable).
ensure_guacd() {
  local first="${1%%,*}" host port
  host="${first%:*}" port="${first##*:}"
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then echo "guacd answers at $host:$port"; return 0; fi
  if command -v guacd >/dev/null 2>&1; then
    echo "starting guacd on $host:$port"
    guacd -b "$host" -l "$port" && sleep 1 && return 0
  fi
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "starting guacd from Docker's guacamole/guacd image on $host:$port"
    if docker run -d --rm --name labdesk-guacd -p "$host:$port:4822" guacamole/guacd >/dev/null; then sleep 2; return 0; fi
  fi
  cat >&2 <<MSG
warning: no guacd answers at $host:$port, so the lab page cannot show desktops yet (labs still start).
  guacd 1.5 or newer is needed. Debian does not package it; either
    - run Docker's image:   docker run -d -p $host:$port:4822 guacamole/guacd
    - or build it from the Apache Guacamole source (about 5 minutes): see docs/desktop.md, "Installing guacd"
  then run ./scripts/demo again (or point LABDESK_GUACD_HOSTS at a guacd elsewhere).
MSG
}

# The real OpenStack Heat the Heat connector's tests run against: two standalone engines (two
# "providers", for failover) from ../shared/tools/heat-standalone, each on a free loopback port with a
# fresh database, sharing one venv. Exports LABDESK_TEST_HEAT and LABDESK_TEST_HEAT_2; stop_heat ends
# them by PID. Without the tool the Heat tests skip and say why. A LABDESK_TEST_HEAT already set is used.
HEAT_TOOL="$(pwd)/../shared/tools/heat-standalone"
HEAT_RUN_DIR=""

_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

ensure_heat() {
  if [ -n "${LABDESK_TEST_HEAT:-}" ]; then echo "using the Heat at $LABDESK_TEST_HEAT"; return 0; fi
  if [ ! -x "$HEAT_TOOL/start" ]; then echo "note: $HEAT_TOOL is absent, so the real-Heat tests will skip"; return 0; fi
  local shared="${HEAT_HOME:-$HOME/.cache/labdesk-heat}" n
  if [ ! -x "$shared/venv/bin/heat-manage" ]; then
    echo "installing the standalone Heat into $shared/venv (about a minute, once)"
    HEAT_HOME="$shared" HEAT_PORT="$(_free_port)" "$HEAT_TOOL/start" >/dev/null && HEAT_HOME="$shared" "$HEAT_TOOL/stop" >/dev/null
  fi
  HEAT_RUN_DIR=$(mktemp -d /tmp/labdesk-heat.XXXXXX)
  for n in 1 2; do
    mkdir -p "$HEAT_RUN_DIR/$n" && ln -s "$shared/venv" "$HEAT_RUN_DIR/$n/venv"
    HEAT_HOME="$HEAT_RUN_DIR/$n" HEAT_PORT="$(_free_port)" HEAT_FRESH=1 HEAT_STEP_SLEEP=0.1 \
      "$HEAT_TOOL/start" >"$HEAT_RUN_DIR/$n.out" 2>&1 &
  done
  wait
  for n in 1 2; do
    if ! tail -n1 "$HEAT_RUN_DIR/$n.out" | grep -q '^http://'; then
      echo "the standalone Heat did not start:" >&2; cat "$HEAT_RUN_DIR/$n.out" >&2; stop_heat
      # CI must run the real-backend tests; a developer's run goes on, and the Heat tests skip saying why.
      if [ "${CI:-}" = true ]; then echo "error: CI needs the real Heat" >&2; return 1; fi
      echo "warning: the real-Heat tests will skip" >&2; return 0
    fi
  done
  LABDESK_TEST_HEAT=$(tail -n1 "$HEAT_RUN_DIR/1.out"); LABDESK_TEST_HEAT_2=$(tail -n1 "$HEAT_RUN_DIR/2.out")
  export LABDESK_TEST_HEAT LABDESK_TEST_HEAT_2
  echo "real Heat engines at $LABDESK_TEST_HEAT and $LABDESK_TEST_HEAT_2"
}

stop_heat() {
  [ -n "$HEAT_RUN_DIR" ] || return 0
  local n
  for n in 1 2; do HEAT_HOME="$HEAT_RUN_DIR/$n" "$HEAT_TOOL/stop" >/dev/null 2>&1 || true; done
  rm -rf "$HEAT_RUN_DIR"
  HEAT_RUN_DIR=""
}
