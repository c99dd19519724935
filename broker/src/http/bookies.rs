//! Bookies at Pulsar's admin v2 paths: the registered list and the racks map that puts
//! bookies in racks and affinity groups (`/bookies/racks-info` in meta, changed only by
//! compare-and-set). Placement reads the map when it picks a new ledger's ensemble.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use magnetar_bookie::placement::{self, BookieInfo, DEFAULT_GROUP, RACKS_INFO_PATH, RacksInfo};
use magnetar_meta::MetadataStoreExt;
use serde::Deserialize;
use serde_json::json;

use super::common::{Stop, Svc, answered, err};
use crate::names::valid_segment;
use crate::service::BrokerService;

pub(super) fn routes() -> Router<Arc<BrokerService>> {
    Router::new()
        .route("/admin/v2/bookies/all", get(all_bookies))
        .route("/admin/v2/bookies/racks-info", get(racks_info))
        .route(
            "/admin/v2/bookies/racks-info/{bookie}",
            get(bookie_rack)
                .post(set_bookie_rack)
                .delete(delete_bookie_rack),
        )
}

/// `host:port`, as bookies register themselves.
fn check_address(bookie: &str) -> Result<(), Response> {
    let ok = bookie.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p > 0)
            && host.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')
            })
    });
    if ok {
        Ok(())
    } else {
        Err(err(
            StatusCode::PRECONDITION_FAILED,
            format!("Invalid bookie address {bookie:?}: expected host:port"),
        ))
    }
}

async fn all_bookies(State(svc): Svc) -> Response {
    match svc.ledgers.available_bookies().await {
        Ok(list) => {
            let bookies: Vec<_> = list
                .into_iter()
                .map(|c| json!({"bookieId": c.addr}))
                .collect();
            axum::Json(json!({ "bookies": bookies })).into_response()
        }
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The map as placement reads it (an unreadable record is reported in the log and reads as
/// empty there too), so what an operator sees is what ledgers are placed by.
async fn read_racks(svc: &BrokerService) -> Result<RacksInfo, Response> {
    svc.ledgers
        .racks_info()
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn racks_info(State(svc): Svc) -> Response {
    match read_racks(&svc).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(r) => r,
    }
}

async fn bookie_rack(State(svc): Svc, Path(bookie): Path<String>) -> Response {
    if let Err(r) = check_address(&bookie) {
        return r;
    }
    match read_racks(&svc).await {
        Ok(r) => match placement::group_of(&r, &bookie) {
            Some((_, info)) => axum::Json(info).into_response(),
            None => err(
                StatusCode::NOT_FOUND,
                format!("Bookie {bookie} is not in the racks map"),
            ),
        },
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InfoBody {
    #[serde(default)]
    rack: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
}

/// Puts a bookie in a group (`?group=`, default `default`) with its rack; a bookie is in one
/// group, so this moves it out of any other.
async fn set_bookie_rack(
    State(svc): Svc,
    Path(bookie): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = check_address(&bookie) {
        return r;
    }
    let group = q.get("group").map_or(DEFAULT_GROUP, String::as_str);
    if !valid_segment(group) {
        return err(
            StatusCode::PRECONDITION_FAILED,
            format!("Invalid group name {group:?}"),
        );
    }
    let body: InfoBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad bookie info: {e}")),
    };
    let info = BookieInfo {
        rack: body.rack.filter(|r| !r.is_empty()),
        hostname: body.hostname.filter(|h| !h.is_empty()),
    };
    let res = svc
        .meta
        .update_json::<RacksInfo, _, Stop>(RACKS_INFO_PATH, |current| {
            let mut racks = current.unwrap_or_default();
            placement::set_bookie(&mut racks, group, &bookie, info.clone());
            Ok(racks)
        })
        .await;
    answered(res)
}

async fn delete_bookie_rack(State(svc): Svc, Path(bookie): Path<String>) -> Response {
    if let Err(r) = check_address(&bookie) {
        return r;
    }
    let res = svc
        .meta
        .update_json::<RacksInfo, _, Stop>(RACKS_INFO_PATH, |current| {
            let mut racks = current.unwrap_or_default();
            if !placement::remove_bookie(&mut racks, &bookie) {
                return Err(Stop::Reply(err(
                    StatusCode::NOT_FOUND,
                    format!("Bookie {bookie} is not in the racks map"),
                )));
            }
            Ok(racks)
        })
        .await;
    answered(res)
}
