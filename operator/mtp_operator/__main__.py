from mtp_operator.main import main

main()
