# Sourced by the scripts that install Debian packages they need (setup.sh, valgrind.sh,
# bench_instructions.sh, bench_serve.sh).

# apt_install PACKAGE...: installs the packages with apt-get, through sudo unless root.
apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# need_command COMMAND PACKAGE: installs PACKAGE unless COMMAND is on PATH.
need_command() {
  command -v "$1" >/dev/null && return
  echo "[$(basename "$0" .sh)] installing $2" >&2
  apt_install "$2"
}
