"""Pieces of the Streamlit dashboard (app.py) that need no Streamlit: the page state and its URL,
plan codes, chart builders and text formatting. Each is a pure function of its inputs so that tests
can call it without a browser; app.py lays them out."""
