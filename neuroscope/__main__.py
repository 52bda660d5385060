from neuroscope.cli import main

main()
