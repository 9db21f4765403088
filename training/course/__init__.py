"""The lectures' own exercises that are not training runs: the counts bigram (makemore part 1) and the
manual backward pass of "becoming a backprop ninja" (makemore part 4). `python -m training counts|ninja`."""
