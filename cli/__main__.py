from aekit.cli.main import main

main()
