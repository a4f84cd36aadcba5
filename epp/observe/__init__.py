"""What epp decides, made visible: the prediction-accuracy metric (always), and with --ui a bounded log of
every routing decision, the pool as epp sees it, the plugins' debug state and a live web page over them.

    observer.py   the director's hook: records decisions, times first bytes, feeds the accuracy metric
    accuracy.py   predicted minus reported cached tokens per request (Prometheus)
    decisions.py  one decision's record and the ring buffer of recent ones (the `since` cursor)
    pool.py       the pool snapshot and the scheduling config, for the page and /debug/pool
    plugin_state.py  /debug/plugins/state, as upstream's state dumper
    live.py       the page's periodic update: new decisions, the pool, chart numbers
    http.py       the admin HTTP server (metrics port, or --ui-port): /metrics, /debug/*, /ui
    static/       the page (HTML, JS, CSS): everything it loads ships in the package
"""
