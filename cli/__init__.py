"""The `herlev` command line (installed as the import package `herlev_cli`)."""
