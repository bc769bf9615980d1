import os
import subprocess
import unittest


class GreetScript(unittest.TestCase):
    def test_executable(self):
        self.assertTrue(os.access("greet.sh", os.X_OK))

    def test_with_name(self):
        out = subprocess.run(["./greet.sh", "Ada"], capture_output=True, text=True, timeout=20)
        self.assertEqual(out.stdout, "Hello, Ada!\n")

    def test_without_name(self):
        out = subprocess.run(["./greet.sh"], capture_output=True, text=True, timeout=20)
        self.assertEqual(out.stdout, "Hello, world!\n")


if __name__ == "__main__":
    unittest.main()
