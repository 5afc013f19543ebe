#!/usr/bin/env bash
# Creates one virtual environment per peer simulator under
# benchmarks/peers/.venvs/<peer>: requirements-<peer>.txt pins the peer and its
# main libraries, constraints-<peer>.txt (a pip freeze of a working install)
# every other dependency.
#
#   bash benchmarks/peers/setup.sh                 # fedjax, pfl and flower
#   bash benchmarks/peers/setup.sh pfl flower      # some of them
#
# Only PyPI is used. A peer that fails to install is reported and the others
# go on; its output stays in .venvs/<peer>.failed, whose last line the suite
# shows in that peer's rows ("not installed: ...").
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
PEERS=("$@")
[ ${#PEERS[@]} -eq 0 ] && PEERS=(fedjax pfl flower)
mkdir -p "$HERE/.venvs"
status=0
for peer in "${PEERS[@]}"; do
  venv="$HERE/.venvs/$peer"
  req="$HERE/requirements-$peer.txt"
  log="$HERE/.venvs/$peer.failed"
  if [ ! -f "$req" ]; then echo "unknown peer: $peer" >&2; status=1; continue; fi
  echo "== $peer: $venv"
  rm -rf "$venv" "$log"
  if { "$PYTHON" -m venv "$venv" \
      && "$venv/bin/python" -m pip install -q --upgrade 'pip<26' \
      && "$venv/bin/python" -m pip install -q -r "$req" -c "$HERE/constraints-$peer.txt" \
      && "$venv/bin/python" -c "import sys; sys.path.insert(0, '$HERE'); import check_import; check_import.main('$peer')"; \
      } > "$log" 2>&1; then
    cat "$log"
    rm -f "$log"
    "$venv/bin/python" -m pip freeze > "$venv/freeze.txt"
    echo "== $peer: ok"
  else
    tail -n 20 "$log" >&2
    echo "== $peer: FAILED (output in $log; its rows in the suite say so)" >&2
    rm -rf "$venv"
    status=1
  fi
done
exit $status
