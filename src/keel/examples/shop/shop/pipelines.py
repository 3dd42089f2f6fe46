"""An online shop's data product: events in, lake tables, live and daily views, recommendations under an A/B test."""

import keel


class PageView(keel.Event):
    user_id: str
    item_id: str


class Purchase(keel.Event):
    user_id: str
    item_id: str
    price: float


# Streams: what the shop's front end sends to the gateway.
page_views = keel.stream("page_views", PageView, key="user_id", partitions=2, retention="7d",
                         owner="growth", description="a user looked at an item")
purchases = keel.stream("purchases", Purchase, key="user_id", owner="growth", description="a user bought an item")

# Every event lands in the lake exactly once.
page_views_table = keel.table("page_views", partition_by=["event_date"], owner="growth",
                              description="every page view, as acknowledged")
purchases_table = keel.table("purchases", partition_by=["event_date"], owner="growth",
                             description="every purchase, as acknowledged")
keel.land(page_views, page_views_table)
keel.land(purchases, purchases_table)

# Live: items by views in 5-minute windows, top 10 of the latest window under the key "_top".
trending = keel.view("trending", ttl="1h", owner="growth", description="views per item, current 5-minute window")
item_views_5m = keel.table("item_views_5m", owner="growth", description="views per item per closed 5-minute window")


@keel.aggregate(page_views, by="item_id", window=keel.tumbling("5m"), lateness="1m", top=10,
                into=[trending, item_views_5m])
def item_views(w):
    """Views per item in 5-minute windows."""
    return {"views": w.count(), "users": w.n_unique("user_id")}


# What each user looked at recently (their items in the latest micro-batch that had them).
recent = keel.view("recent_items", ttl="1d", owner="recs", description="items a user viewed recently")


@keel.processor(page_views, into=recent)
def recent_items(batch):
    """The distinct items of each user in the batch."""
    import polars as pl

    return batch.group_by("user_id").agg(pl.col("item_id").unique(maintain_order=True).tail(10).alias("items"))


# Daily: items viewed by the same users, and the 10 most similar items of each item.
co_views = keel.table("co_views", owner="recs", description="pairs of items viewed by the same users")
similar_items = keel.view("similar_items", ttl="2d", owner="recs", description="the 10 items most co-viewed with each item")


@keel.job(schedule="0 3 * * *", inputs=["page_views"], output=co_views, owner="recs")
def compute_co_views(ctx):
    """Count, for each pair of items, the users who viewed both."""
    return """
        with seen as (select distinct user_id, item_id from page_views)
        select a.item_id, b.item_id as other_item, count(*) as users
        from seen a join seen b on a.user_id = b.user_id and a.item_id <> b.item_id
        group by 1, 2
    """


@keel.job(schedule="30 3 * * *", inputs=["co_views"], output=similar_items, key="item_id", owner="recs")
def compute_similar_items(ctx):
    """Keep the 10 items most co-viewed with each item."""
    return """
        select item_id, list(other_item order by users desc, other_item)[1:10] as similar
        from co_views group by item_id
    """


# The experiment: trending items (control) versus personal recommendations (treatment).
keel.metric("purchase_rate", table="purchases", unit="user_id", aggregate="conversion",
            description="share of exposed users who bought anything")
keel.metric("revenue_per_user", table="purchases", unit="user_id", aggregate="sum", value="price")
recs_v2 = keel.experiment("recs_v2", variants={"trending": 0.5, "personal": 0.5}, unit="user_id",
                          metrics=["purchase_rate", "revenue_per_user"], owner="recs",
                          description="do personal recommendations sell more than trending items?")


def trending_items(req):
    """The ten items trending now: the control, and what answers when personal recommendations cannot be read."""
    top = req.view("trending").get("_top") or {}
    return {"items": [row["item_id"] for row in top.get("items", [])][:10], "source": "trending"}


@keel.endpoint("GET /recommend/{user_id}", experiment=recs_v2, reads=["trending", "recent_items", "similar_items"],
               fallback=trending_items, owner="recs")
def recommend(req, variant):
    """Ten items for a user: personal (similar to what they viewed) or trending."""
    if variant == "personal":
        recent_value = req.view("recent_items").get(req.params["user_id"]) or {}
        items = []
        for item in reversed(recent_value.get("items", [])):
            for other in (req.view("similar_items").get(item) or {}).get("similar", []):
                if other not in items:
                    items.append(other)
        if items:
            return {"items": items[:10], "source": "personal"}
    return trending_items(req)


# Checks: the lake is fed.
keel.freshness("page_views", within="15m", owner="growth")
keel.freshness("purchases", within="1h", owner="growth")
keel.volume("page_views", at_least=1, within="1d", owner="growth")
