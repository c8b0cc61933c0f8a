"""What several test modules share: where the checkout and ../shared are, the tiny demo config, the train.py
command as a user types it, a throwaway PostgreSQL server, photos as another source takes them."""
