"""The explorer's views: each draws one thing of the session for one layout (`build`, then `update`)."""
