from omni_tasks.cli.main import main

main()
