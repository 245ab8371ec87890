"""data: no-data cause on backfill partitions, reconciliation results, news articles and per-ticker sentiment

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_tasks.storage.types import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("backfill_partitions") as batch:
        batch.add_column(sa.Column("cause", sa.String(length=30), nullable=True))
    op.create_table(
        "reconciliation_results",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("checked_at", UtcDateTime(), nullable=False),
        sa.Column("symbol", sa.String(length=12), nullable=False),
        sa.Column("timeframe", sa.String(length=8), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("adjustment", sa.String(length=8), nullable=False),
        sa.Column("stored_provider", sa.String(length=32), nullable=False),
        sa.Column("stored_feed", sa.String(length=16), nullable=False),
        sa.Column("other_provider", sa.String(length=32), nullable=False),
        sa.Column("other_feed", sa.String(length=16), nullable=False),
        sa.Column("stored_close", sa.Double(), nullable=False),
        sa.Column("other_close", sa.Double(), nullable=False),
        sa.Column("close_diff_bp", sa.Double(), nullable=False),
        sa.Column("stored_volume", sa.Double(), nullable=False),
        sa.Column("other_volume", sa.Double(), nullable=False),
        sa.Column("volume_diff_pct", sa.Double(), nullable=True),
        sa.Column("volume_compared", sa.Boolean(), nullable=False),
        sa.Column("tolerance_bp", sa.Double(), nullable=False),
        sa.Column("beyond_tolerance", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_results")),
        sa.UniqueConstraint(
            "symbol", "timeframe", "ts", "adjustment", "stored_feed", "other_provider", name="uq_reconciliation_results_bar"
        ),
    )
    op.create_index(op.f("ix_reconciliation_results_checked_at"), "reconciliation_results", ["checked_at"], unique=False)
    op.create_index(op.f("ix_reconciliation_results_beyond_tolerance"), "reconciliation_results", ["beyond_tolerance"], unique=False)
    op.create_table(
        "news_articles",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("source_domain", sa.String(length=200), nullable=True),
        sa.Column("category", sa.String(length=200), nullable=True),
        sa.Column("authors", sa.JSON(), nullable=False),
        sa.Column("topics", sa.JSON(), nullable=False),
        sa.Column("banner_image", sa.Text(), nullable=True),
        sa.Column("published_at", UtcDateTime(), nullable=False),
        sa.Column("overall_sentiment_score", sa.Double(), nullable=True),
        sa.Column("overall_sentiment_label", sa.String(length=40), nullable=True),
        sa.Column("fetched_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_news_articles")),
        sa.UniqueConstraint("provider", "url", name="uq_news_articles_provider_url"),
    )
    op.create_index(op.f("ix_news_articles_published_at"), "news_articles", ["published_at"], unique=False)
    op.create_table(
        "news_ticker_sentiment",
        sa.Column("article_id", sa.BigInteger(), nullable=False),
        sa.Column("ticker", sa.String(length=40), nullable=False),
        sa.Column("relevance_score", sa.Double(), nullable=True),
        sa.Column("sentiment_score", sa.Double(), nullable=True),
        sa.Column("sentiment_label", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["article_id"], ["news_articles.id"], name=op.f("fk_news_ticker_sentiment_article_id_news_articles"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("article_id", "ticker", name=op.f("pk_news_ticker_sentiment")),
    )
    op.create_index("ix_news_ticker_sentiment_ticker", "news_ticker_sentiment", ["ticker"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_news_ticker_sentiment_ticker", table_name="news_ticker_sentiment")
    op.drop_table("news_ticker_sentiment")
    op.drop_index(op.f("ix_news_articles_published_at"), table_name="news_articles")
    op.drop_table("news_articles")
    op.drop_index(op.f("ix_reconciliation_results_beyond_tolerance"), table_name="reconciliation_results")
    op.drop_index(op.f("ix_reconciliation_results_checked_at"), table_name="reconciliation_results")
    op.drop_table("reconciliation_results")
    with op.batch_alter_table("backfill_partitions") as batch:
        batch.drop_column("cause")
