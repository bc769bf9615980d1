import pathlib
import unittest


class CsvReport(unittest.TestCase):
    def test_report(self):
        self.assertEqual(
            pathlib.Path("report.txt").read_text().splitlines(),
            ["east 301", "north 200", "south 100", "west 5"],
        )


if __name__ == "__main__":
    unittest.main()
