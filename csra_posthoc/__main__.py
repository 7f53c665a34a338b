"""``python -m csra_posthoc``: the CLI; also the module ``torchrun ... -m csra_posthoc sweep ...`` launches."""


def _main() -> None:
    from .cli.app import main  # lazily: ``--help`` stays as fast as the console script's

    main()


if __name__ == "__main__":
    _main()
