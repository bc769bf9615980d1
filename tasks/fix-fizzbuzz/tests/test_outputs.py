import subprocess
import sys
import unittest


def expected(n):
    words = []
    for i in range(1, n + 1):
        words.append("FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else str(i))
    return "\n".join(words) + "\n"


def run(n):
    return subprocess.run([sys.executable, "fizzbuzz.py", str(n)], capture_output=True, text=True, timeout=20)


class FixFizzBuzz(unittest.TestCase):
    def test_fifteen(self):
        self.assertEqual(run(15).stdout, expected(15))

    def test_thirty_one(self):
        self.assertEqual(run(31).stdout, expected(31))

    def test_one(self):
        self.assertEqual(run(1).stdout, expected(1))


if __name__ == "__main__":
    unittest.main()
