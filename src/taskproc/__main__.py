from taskproc.cli import main

main()
