import platform
import unittest

import textstats


class TextStatsTest(unittest.TestCase):
    def test_words_are_lowercased(self):
        self.assertEqual(textstats.words("Hello, World"), ["hello", "world"])

    def test_top_words_orders_by_count_then_word(self):
        text = "b a b c a b"
        self.assertEqual(textstats.top_words(text, 2), [("b", 3), ("a", 2)])

    def test_mean_word_length(self):
        self.assertAlmostEqual(textstats.mean_word_length("ab abcd"), 3.0)

    def test_empty_text_has_zero_mean(self):
        self.assertEqual(textstats.mean_word_length("..."), 0.0)

    def test_runs_on_linux(self):
        self.assertEqual(platform.system(), "Linux")


if __name__ == "__main__":
    unittest.main()
