"""A receiver function that collects messages and lets a test wait for them."""
import threading


class Inbox:
    def __init__(self):
        self.items = []
        self.cond = threading.Condition()

    def __call__(self, msg):
        with self.cond:
            self.items.append(msg)
            self.cond.notify_all()

    def wait_for(self, n, timeout=20.0):
        """The messages so far, once there are n of them or timeout passed."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.items) >= n, timeout)
            return list(self.items)
