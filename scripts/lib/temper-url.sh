# Sourced by the scripts that start `temper serve --port 0` in the background.
#
#   url=$(temper_url LOG PID) || exit 1
#
# prints the server's URL from its `listening on http://…` line in LOG, waiting up to 30 s;
# fails, showing LOG, when the process PID ends first or never says where it listens.
temper_url() {
  local log=$1 pid=$2 url=""
  for _ in $(seq 1 300); do
    # -s: the shell may not have created the log yet.
    url=$(grep -so 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //') || true
    if [ -n "$url" ]; then
      echo "$url"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  echo "temper did not start" >&2
  cat "$log" >&2
  return 1
}
