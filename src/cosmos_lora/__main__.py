"""`python -m cosmos_lora ...` is `cosmos-lora ...`."""

from cosmos_lora.cli.app import main

if __name__ == "__main__":
    main()
