import networkx


def handler(event, context):
    graph = networkx.barabasi_albert_graph(event["nodes"], 3, seed=event["seed"])
    order = list(networkx.bfs_tree(graph, 0))
    rank = {node: 1 / len(graph) for node in graph}
    for _ in range(30):  # PageRank by power iteration (networkx's own needs scipy)
        rank = {node: 0.15 / len(graph) + 0.85 * sum(rank[m] / graph.degree(m) for m in graph[node]) for node in graph}
    top = max(rank, key=rank.get)
    return {"bfs": order[:10], "visited": len(order), "top": top, "rank": round(rank[top], 9)}
