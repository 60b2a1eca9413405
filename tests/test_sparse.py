"""BM25 sparse vectors: tokens, stems, stable ids, saturated document weights."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag import sparse
from rag.sparse import document_vector, query_vector, stem, term_id, tokenize


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        # From Porter's paper and his published vocabulary/output lists.
        ("caresses", "caress"), ("ponies", "poni"), ("cats", "cat"), ("feed", "feed"),
        ("agreed", "agre"), ("plastered", "plaster"), ("motoring", "motor"), ("sing", "sing"),
        ("hopping", "hop"), ("falling", "fall"), ("filing", "file"), ("happy", "happi"),
        ("relational", "relat"), ("conditional", "condit"), ("generalizations", "gener"),
        ("oscillators", "oscil"), ("adjustment", "adjust"), ("electrical", "electr"),
        ("hopeful", "hope"), ("goodness", "good"), ("dependent", "depend"),
        ("adoption", "adopt"), ("controll", "control"), ("roll", "roll"),
        # The book's vocabulary: forms a reader types must meet the forms in the text.
        ("robots", "robot"), ("robotics", "robot"), ("controllers", "control"),
        ("controlling", "control"), ("sensors", "sensor"), ("running", "run"),
        ("humanoids", "humanoid"), ("kinematics", "kinemat"), ("actuators", "actuat"),
    ],
)  # fmt: skip
def test_porter_stems(word: str, expected: str) -> None:
    assert stem(word) == expected


def test_tokens_are_lowercased_stemmed_and_stop_words_dropped() -> None:
    assert tokenize("What are the Sensors of THE robot?") == ["sensor", "robot"]
    assert tokenize("the of and to is it what how") == []
    assert tokenize("") == [] and tokenize("  \n\t ... !!") == []


def test_code_identifiers_are_indexed_whole_and_in_parts() -> None:
    terms = tokenize("node.create_publisher(PointCloud2)")
    assert terms == [
        "node", "creat", "publish", "create_publisher", "point", "cloud", "2", "pointcloud2",
    ]  # fmt: skip
    # So a reader's spelled-out words and the exact identifier both match.
    assert {"creat", "publish"} <= set(tokenize("create a publisher"))
    assert "create_publisher" in tokenize("create_publisher")
    assert set(tokenize("HTTPServer")) == {"http", "server", "httpserver"}


def test_technical_spellings_meet_each_other() -> None:
    assert "6dof" in set(tokenize("a 6-DOF arm")) & set(tokenize("6DOF arms"))
    assert {"6", "dof"} <= set(tokenize("6 DOF"))
    # "ROS 2" in the text, "ros2" typed by the reader (and the package name whole).
    assert set(tokenize("ROS 2")) <= set(tokenize("ros2"))
    assert "ros2" in tokenize("ros2") and "rclpy" in tokenize("import rclpy")
    # Plural acronyms are not camelCase: IMUs -> imu, not "im" + "us".
    assert tokenize("IMUs") == tokenize("IMU") == ["imu"]
    assert tokenize("LiDAR")[-1] == "lidar" and "lidar" in tokenize("lidar")


def test_unicode_words_are_kept() -> None:
    assert tokenize("Übung zur Kinematik: naïve") == ["übung", "zur", "kinematik", "naïve"]
    assert tokenize("机器人") == ["机器人"]


def test_term_ids_are_stable_across_processes() -> None:
    # A literal: Python's salted hash() would differ per process and break a
    # persisted index; blake2b-32 does not.
    assert term_id("robot") == 743254053
    assert query_vector("Robots!").indices == [743254053]


def test_document_vector_has_sorted_unique_indices_and_bm25_weights() -> None:
    vec = document_vector("robot arm robot gripper robot arm")
    assert vec.indices == sorted(set(vec.indices)) and len(vec.values) == len(vec.indices)
    weights = dict(zip(vec.indices, vec.values, strict=True))
    robot, arm, gripper = (weights[term_id(t)] for t in ("robot", "arm", "gripper"))
    assert robot > arm > gripper > 0
    # Exactly tf·(k1+1) / (tf + k1·(1-b+b·len/avg_len)), len = 6 tokens.
    norm = sparse.K1 * (1 - sparse.B + sparse.B * 6 / sparse.AVG_LEN)
    assert robot == pytest.approx(3 * (sparse.K1 + 1) / (3 + norm))


def test_term_frequency_saturates() -> None:
    filler = "alpha bravo charlie delta echo foxtrot golf hotel india"
    once = document_vector("robot " + filler)  # same length: 10 tokens each
    ten = document_vector("robot " * 10)
    w1, w10 = once.values[once.indices.index(term_id("robot"))], ten.values[0]
    assert 1 < w10 / w1 < sparse.K1 + 1
    assert w10 < sparse.K1 + 1  # the ceiling, however often a word repeats


def test_longer_documents_weigh_a_term_less() -> None:
    short = document_vector("kalman filter")
    long = document_vector("kalman filter " + " ".join(f"w{i}x" for i in range(300)))
    k = term_id("kalman")
    assert long.values[long.indices.index(k)] < short.values[short.indices.index(k)]


def test_query_vector_weighs_each_unique_term_once() -> None:
    q = query_vector("Robot robots ROBOT arm, and the arm")
    assert q.indices == sorted([term_id("robot"), term_id("arm")])
    assert q.values == [1.0, 1.0]
    assert query_vector("") == document_vector("") == sparse.SparseVector([], [])


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_vectors_are_well_formed_for_any_text(text: str) -> None:
    doc, query = document_vector(text), query_vector(text)
    assert doc.indices == sorted(set(doc.indices)) == query.indices
    assert all(0 <= i < 2**32 for i in doc.indices)
    assert all(0 < v < sparse.K1 + 1 for v in doc.values)
    assert {term_id(t) for t in tokenize(text)} == set(doc.indices)
