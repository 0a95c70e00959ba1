"""Keystone stand-in for the mini cloud's nova-api paste pipeline (in place of
keystonemiddleware's authtoken): every request is an admin of project "admin", as the
headers authtoken would set after validating a token. Nova 34 has no noauth2 any more."""


def filter_factory(global_conf, **local_conf):
    def filter_(app):
        def middleware(environ, start_response):
            environ.update({
                "HTTP_X_IDENTITY_STATUS": "Confirmed", "HTTP_X_USER_ID": "admin",
                "HTTP_X_USER_NAME": "admin", "HTTP_X_PROJECT_ID": "admin",
                "HTTP_X_PROJECT_NAME": "admin", "HTTP_X_ROLES": "admin,member,reader",
                "HTTP_X_AUTH_TOKEN": environ.get("HTTP_X_AUTH_TOKEN", "admin"),
            })
            return app(environ, start_response)

        return middleware

    return filter_
