from heron.cli.main import main

main()
