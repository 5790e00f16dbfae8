#!/usr/bin/env bash
# The test command (README and CI): lint, the whole suite on TensorFlow, then the tests marked
# `backends` again on JAX and on PyTorch. Arguments go to every pytest run, e.g.
#   bash tests/run.sh -k attention        # the matching tests, on each backend
#   bash tests/run.sh -m "not slow"       # combined with `backends` for the JAX and PyTorch runs
# A backend run that selects no test (pytest's exit code 5) is fine as long as one of the runs selected
# some; each run prints its own summary line. Stops at the first run that fails.
# The TensorFlow and JAX runs use $TEST_WORKERS pytest-xdist processes (default 2; 0 or 1: one process),
# one test file per process at a time (--dist loadfile: a file's module fixtures are built once), the
# longest files first (tests/conftest.py: LONG_FILES).
set -uo pipefail
cd "$(dirname "$0")/.."
python -m ruff check keras_vit export tests benchmarks || exit 1

marker=""
args=()
while (($#)); do  # a user's -m EXPR must not replace the `backends` marker of the JAX and PyTorch runs
    case $1 in
        -m) marker=${2:?-m needs an expression}; shift 2 ;;
        -m*) marker=${1#-m}; shift ;;
        -q | --quiet) shift ;;  # one -q is given below; -qq would hide the summary line
        *) args+=("$1"); shift ;;
    esac
done
backends_marker="backends${marker:+ and ($marker)}"
workers=${TEST_WORKERS:-2}
xdist=()
if ((workers > 1)); then
    xdist=(-n "$workers" --dist loadfile --no-loadscope-reorder)
fi

selected=0
run() {  # run BACKEND MARKER [OPTION...]: one pytest run; exit on failure
    local backend=$1 expr=$2 code
    shift 2
    echo "=== KERAS_BACKEND=$backend pytest${*:+ $*}${expr:+ -m \"$expr\"} ${args[*]:-}"
    KERAS_BACKEND=$backend python -m pytest -q "$@" ${expr:+-m "$expr"} ${args[@]+"${args[@]}"}
    code=$?
    if ((code == 5)); then
        echo "=== $backend: no test selected"
    elif ((code != 0)); then
        echo "=== $backend: FAILED (pytest exit code $code)"
        exit "$code"
    else
        selected=1
    fi
}
run tensorflow "$marker" ${xdist[@]+"${xdist[@]}"}
run jax "$backends_marker" ${xdist[@]+"${xdist[@]}"}
run torch "$backends_marker"  # about half a minute: not worth starting workers
if ((!selected)); then
    echo "=== no test selected on any backend"
    exit 5
fi
