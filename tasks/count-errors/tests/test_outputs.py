import pathlib
import unittest


class CountErrors(unittest.TestCase):
    def test_count(self):
        text = pathlib.Path("error_count.txt").read_text()
        self.assertEqual(text.strip(), "4")
        self.assertTrue(text.endswith("\n"))


if __name__ == "__main__":
    unittest.main()
