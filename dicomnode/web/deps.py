"""FastAPI dependencies shared by the pages and the API: the node, the user, the CSRF check."""
from __future__ import annotations

from fastapi import Depends, HTTPException, Request

from dicomnode.node import Node
from dicomnode.web.auth import Auth, LoginRequired, Principal, check_csrf


def get_node(request: Request) -> Node:
    return request.app.state.node


def get_auth(request: Request) -> Auth:
    return request.app.state.auth


def page_user(request: Request, auth: Auth = Depends(get_auth)) -> Principal:
    principal = auth.principal(request)
    if principal is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return principal


def api_user(request: Request, auth: Auth = Depends(get_auth)) -> Principal:
    principal = auth.principal(request)
    if principal is None:
        raise HTTPException(401, "log in or send Authorization: Bearer <api token>",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


async def page_post(request: Request, user: Principal = Depends(page_user)) -> Principal:
    await check_csrf(request, user)
    return user


async def api_post(request: Request, user: Principal = Depends(api_user)) -> Principal:
    await check_csrf(request, user)
    return user
