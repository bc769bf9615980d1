import pathlib
import unittest


class HelloWorld(unittest.TestCase):
    def test_file_exists(self):
        self.assertTrue(pathlib.Path("hello.txt").is_file())

    def test_content(self):
        self.assertEqual(pathlib.Path("hello.txt").read_text(), "Hello, world!\n")


if __name__ == "__main__":
    unittest.main()
