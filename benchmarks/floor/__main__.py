"""The floor: a program that only reads its stdin and prints it back, built by `./build.sh hello`
exactly as deviceid-inject is (Nuitka standalone folder behind the same launcher). No binary in
that layout can start faster on this machine."""

import sys

sys.stdout.buffer.write(sys.stdin.buffer.read())
