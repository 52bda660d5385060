from neuroscope.cli.serve import main

main()
