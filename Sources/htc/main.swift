print("htc")
