from ecm_edge.cli.main import main

main()
