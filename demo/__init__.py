"""`make demo`: one mount and one rotation against the embedded Key Vault emulator."""
