from flowtrail.cli import main

main()
