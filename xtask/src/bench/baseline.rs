//! The baseline (`cargo xtask bench-baseline`): the least a server can do for the same
//! traffic — a bare warp `PUT /update/*` handler answering 200 `{}` (and `POST
//! /wpush/v1/*` answering 201, for WebPush) and a bare websocket echo — so simplepush's numbers can be read as a ratio to it.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use warp::Filter;

/// Entry point: serves on two free loopback ports until killed, after printing
/// `simplepush listening ws=ADDR endpoint=ADDR` like the real server.
pub fn main() -> Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("baseline runtime")?
        .block_on(serve())
}

async fn serve() -> Result<()> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let ws_listener = listen(any)?;
    let put_listener = listen(any)?;
    println!(
        "simplepush listening ws={} endpoint={}",
        ws_listener.local_addr()?,
        put_listener.local_addr()?
    );
    let echo = warp::path::end().and(warp::ws()).map(|ws: warp::ws::Ws| {
        ws.on_upgrade(|socket| async move {
            let (mut tx, mut rx) = socket.split();
            while let Some(Ok(message)) = rx.next().await {
                if (message.is_text() || message.is_binary()) && tx.send(message).await.is_err() {
                    break;
                }
            }
        })
    });
    let put = warp::put()
        .and(warp::path("update"))
        .and(warp::path::param::<String>())
        .and(warp::body::bytes())
        .map(|_token: String, _body: warp::hyper::body::Bytes| {
            warp::reply::with_status("{}", warp::http::StatusCode::OK)
        });
    // WebPush's push: a POST answered 201, the body read and dropped.
    let post = warp::post()
        .and(warp::path!("wpush" / "v1" / String))
        .and(warp::body::bytes())
        .map(|_token: String, _body: warp::hyper::body::Bytes| {
            warp::reply::with_status("", warp::http::StatusCode::CREATED)
        });
    tokio::join!(
        warp::serve(echo).incoming(ws_listener).run(),
        warp::serve(put.or(post)).incoming(put_listener).run(),
    );
    Ok(())
}

/// A listener with the same backlog as simplepush's default, so connect storms compare.
fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(4096)?)
}
