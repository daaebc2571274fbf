"""`python -m routerllm_cli` runs the CLI."""

from routerllm_cli.cli.app import main

if __name__ == "__main__":
    main()
