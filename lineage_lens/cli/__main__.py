from lineage_lens.cli import main

main()
