"""The command line: modes (what each `mode=` does), run (plan -> execute -> publish -> reports),
console (all output)."""
