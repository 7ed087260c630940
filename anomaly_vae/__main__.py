from anomaly_vae.console import main

main()
