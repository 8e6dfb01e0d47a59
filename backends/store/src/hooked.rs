//! A [`Store`] that passes every call of another through a [`Hook`]: the server's
//! metrics, and in tests faults and stalls, without writing the trait's delegation out
//! once for each.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    ChannelId, Message, MessageId, Pending, PutOutcome, QueueOutcome, RegisterOutcome, Store,
    StoreError, Swept, Uaid, Update,
};

/// What a [`Hooked`] store does around each call of the store it wraps.
pub trait Hook: Send + Sync + 'static {
    /// Answers operation `op` (the [`Store`] method's name; the provided `ack` and
    /// `ack_expired` come as `ack_many`) in place of `call`, the wrapped store's answer.
    /// `call` does nothing until awaited: a hook that answers without it leaves the
    /// store untouched.
    fn around<T: Send>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> impl Future<Output = Result<T, StoreError>> + Send;
}

/// `inner` with every call but `name` and `close` passed through `hook`.
pub struct Hooked<H> {
    inner: Arc<dyn Store>,
    hook: H,
}

impl<H: Hook> Hooked<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, hook: H) -> Hooked<H> {
        Hooked { inner, hook }
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }
}

#[async_trait]
impl<H: Hook> Store for Hooked<H> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn knows_uaid(&self, uaid: &Uaid) -> Result<bool, StoreError> {
        let call = self.inner.knows_uaid(uaid);
        self.hook.around("knows_uaid", call).await
    }

    async fn registered(&self, uaid: &Uaid, channel: &ChannelId) -> Result<bool, StoreError> {
        let call = self.inner.registered(uaid, channel);
        self.hook.around("registered", call).await
    }

    async fn register(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        max_channels: usize,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        let call = self.inner.register(uaid, channel, max_channels, now);
        self.hook.around("register", call).await
    }

    async fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), StoreError> {
        let call = self.inner.unregister(uaid, channel);
        self.hook.around("unregister", call).await
    }

    async fn put_update(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        update: Update,
        now: u64,
    ) -> Result<PutOutcome, StoreError> {
        let call = self.inner.put_update(uaid, channel, update, now);
        self.hook.around("put_update", call).await
    }

    async fn pending(&self, uaid: &Uaid, now: u64) -> Result<Pending, StoreError> {
        let call = self.inner.pending(uaid, now);
        self.hook.around("pending", call).await
    }

    async fn ack_many(
        &self,
        uaid: &Uaid,
        updates: &[(ChannelId, u64)],
        expired: &[ChannelId],
        now: u64,
    ) -> Result<bool, StoreError> {
        let call = self.inner.ack_many(uaid, updates, expired, now);
        self.hook.around("ack_many", call).await
    }

    async fn put_message(
        &self,
        uaid: &Uaid,
        message: &Message,
        max_queued: usize,
        now: u64,
    ) -> Result<QueueOutcome, StoreError> {
        let call = self.inner.put_message(uaid, message, max_queued, now);
        self.hook.around("put_message", call).await
    }

    async fn messages(
        &self,
        uaid: &Uaid,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let call = self.inner.messages(uaid, now, limit);
        self.hook.around("messages", call).await
    }

    async fn ack_messages(
        &self,
        uaid: &Uaid,
        ids: &[MessageId],
        now: u64,
    ) -> Result<bool, StoreError> {
        let call = self.inner.ack_messages(uaid, ids, now);
        self.hook.around("ack_messages", call).await
    }

    async fn delete_message(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        id: &MessageId,
        now: u64,
    ) -> Result<bool, StoreError> {
        let call = self.inner.delete_message(uaid, channel, id, now);
        self.hook.around("delete_message", call).await
    }

    async fn touch(&self, uaid: &Uaid, now: u64) -> Result<(), StoreError> {
        let call = self.inner.touch(uaid, now);
        self.hook.around("touch", call).await
    }

    async fn sweep(&self, cutoff: u64, now: u64, limit: usize) -> Result<Swept, StoreError> {
        let call = self.inner.sweep(cutoff, now, limit);
        self.hook.around("sweep", call).await
    }

    async fn drop_uaid(&self, uaid: &Uaid) -> Result<(), StoreError> {
        let call = self.inner.drop_uaid(uaid);
        self.hook.around("drop_uaid", call).await
    }

    async fn set_node(&self, uaid: &Uaid, node: &str) -> Result<(), StoreError> {
        let call = self.inner.set_node(uaid, node);
        self.hook.around("set_node", call).await
    }

    async fn node(&self, uaid: &Uaid) -> Result<Option<String>, StoreError> {
        let call = self.inner.node(uaid);
        self.hook.around("node", call).await
    }

    async fn clear_node(&self, uaid: &Uaid, node: &str) -> Result<bool, StoreError> {
        let call = self.inner.clear_node(uaid, node);
        self.hook.around("clear_node", call).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.hook.around("check", self.inner.check()).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}
