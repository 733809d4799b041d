#!/usr/bin/env bash
# Run one eval/gpu script so that all it leaves (its logs and the results it writes) ends up as one archive,
# $OUT/$ARCHIVE.tgz, even when it stops early: for a machine that hands back a few files of a folder, not a tree.
# The script runs under `timeout $LIMIT` (seconds; default 570, inside a 600 s call) with OUT set to a scratch folder
# and RESULTS to $OUT/results there (unless given), so a result is in the archive as soon as it is written.
# Usage: OUT=/tmp/out ARCHIVE=nfig-2 STEP=2 DATA=... bash eval/gpu/packed.sh eval/gpu/nfig.sh
set -uo pipefail
DEST=${OUT:?set OUT, the folder the archive goes to}
SCRATCH=$(mktemp -d)
export OUT=$SCRATCH RESULTS=${RESULTS:-$SCRATCH/results}
mkdir -p "$RESULTS"
pack() { tar czf "$DEST/${ARCHIVE:-out}.tgz" -C "$SCRATCH" . && echo "packed: $DEST/${ARCHIVE:-out}.tgz"; }
trap pack EXIT
timeout "${LIMIT:-570}" bash "$@"
rc=$?
echo "$* exited with $rc"
exit $rc
