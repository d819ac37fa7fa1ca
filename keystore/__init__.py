"""PGP and SSH keys and public-key share links."""
