"""What fishflow ships for trying and testing it without a GPU: the Fish Speech emulator (a real
HTTP server on 127.0.0.1) and the espeak-ng voice behind its ``--speak``. Nothing in the core
imports from here."""
