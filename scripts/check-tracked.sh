#!/usr/bin/env bash
# Fails when git tracks a build output: any file over 1 MiB, any ELF file,
# or any file with an executable bit that is not a script (#!). Run by
# `make lint`.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
while IFS= read -r -d '' f; do
	[ -f "$f" ] || continue
	size=$(stat -c %s "$f")
	if [ "$size" -gt 1048576 ]; then
		echo "tracked file over 1 MiB: $f ($size bytes)"; bad=1
	fi
	if [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]; then
		echo "tracked ELF binary: $f"; bad=1
	elif [ -x "$f" ] && [ "$(head -c 2 "$f")" != "#!" ]; then
		echo "tracked executable that is not a script: $f"; bad=1
	fi
done < <(git ls-files -z)
exit $bad
